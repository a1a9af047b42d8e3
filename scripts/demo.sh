#!/usr/bin/env bash
# The main job: set up .venv when missing, then fetch the demo set and the vggface2 weights, index the
# people, identify the test photos, print the table and write annotated photos to out/annotated/.
# Arguments go to `facerec demo` (e.g. --weights FILE); FACEREC_MIRROR points downloads at a mirror.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/facerec demo "$@"
