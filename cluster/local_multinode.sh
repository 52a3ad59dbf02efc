#!/bin/sh
# A Ray head and worker nodes on this machine (see cluster/local_multinode.py):
#   cluster/local_multinode.sh start [--workers N]    cluster/local_multinode.sh stop
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-"$here/../.venv/bin/python"}
exec "$python" "$here/local_multinode.py" "$@"
