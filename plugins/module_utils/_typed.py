# -*- coding: utf-8 -*-
# Copyright: contributors to dbtools.galera
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Settings dicts as the roles template them, with their numbers and booleans typed (private).

A role builds the dict its filters read from ``"{{ galera_x | int }}"`` values. ansible-core 2.19
renders those as numbers; 2.16 to 2.18 (without ``jinja2_native``) render every value of such a dict
as a string (``"300"``, ``"0.05"``, ``"False"``), and the controller-side rules compare numbers. A
module's argument spec types its options; the filters call ``typed`` instead.
"""

from __future__ import annotations

TRUE = ("true", "yes", "on", "1")
FALSE = ("false", "no", "off", "0", "")


def typed(values: dict, ints=(), floats=(), bools=()) -> dict:
    """A copy of ``values`` with the named keys' strings as int, float or bool; any other value (a
    number already, None, or text that is not one) is left as it is, for the rules to name."""
    out = dict(values)
    for names, convert in ((ints, _int), (floats, _float), (bools, _bool)):
        for name in names:
            if isinstance(out.get(name), str):
                out[name] = convert(out[name])
    return out


def _int(text: str):
    try:
        return int(text.strip())
    except ValueError:
        return text


def _float(text: str):
    try:
        return float(text.strip())
    except ValueError:
        return text


def _bool(text: str):
    word = text.strip().lower()
    return True if word in TRUE else False if word in FALSE else text
