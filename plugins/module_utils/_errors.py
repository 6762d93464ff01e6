# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The one error type of the collection's module_utils (private).

Every expected failure (a refused precondition, bad input, an unreachable server, a store that
answers no) raises ``GaleraError``: ``msg`` says the cause and the fix, ``details`` carries what a
caller or the module result may want (an errno, the lease holder, mismatched files). Modules turn it
into ``fail_json(msg=..., **details)``; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GaleraError(Exception):
    """An expected failure: ``msg`` names the cause and the fix, ``details`` the figures."""

    def __init__(self, msg: str, **details):
        super().__init__(msg)
        self.msg = msg
        self.details = details

    def get(self, name: str, default=None):
        return self.details.get(name, default)
