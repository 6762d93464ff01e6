# Source this to use the project's tools by hand (molecule, ansible, ansible-lint):
#   . scripts/env.sh && cd extensions/molecule && molecule verify
# It sets up the virtualenv, the collection path and the node image like scripts/test.
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
setup_all
