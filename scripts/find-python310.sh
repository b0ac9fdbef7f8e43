#!/usr/bin/env bash
# Print the path of a Python 3.10 interpreter (nnabla 1.39.0 has wheels only up to 3.10):
# python3.10 on PATH, else pyenv's newest 3.10.x. Exit 1 with one line when there is none.
set -u
ok() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1; }
if command -v python3.10 >/dev/null 2>&1; then
  p=$(command -v python3.10)
  if ok "$p"; then echo "$p"; exit 0; fi
fi
root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
for v in $(ls -d "$root"/versions/3.10.* 2>/dev/null | sort -t. -k3 -n -r); do
  if ok "$v/bin/python3.10"; then echo "$v/bin/python3.10"; exit 0; fi
done
echo "no Python 3.10 found: install python3.10 (or 'pyenv install 3.10') — nnabla 1.39.0 needs Python <= 3.10" >&2
exit 1
