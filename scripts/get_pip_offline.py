"""Stand-in for ansible-test's get-pip.py bootstrap script, whose download host is not reachable here.

ansible-test runs its cached ``get_pip_<version>.py`` inside each fresh sanity virtualenv with
pip-install arguments. This bootstraps pip from the interpreter's bundled wheel (ensurepip),
then installs the requested packages (the pinned pip) from the package index.
"""

import ensurepip
import os
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
# ensurepip points PIP_CONFIG_FILE at /dev/null in os.environ; the install below must see
# the machine's pip configuration (index, certificates) again.
env = dict(os.environ)
ensurepip.bootstrap()
subprocess.check_call([sys.executable, "-m", "pip", "install"] + args, env=env)
