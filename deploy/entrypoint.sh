#!/bin/sh
# Entrypoint of the strongmoose image: one image, every process. The first argument, or
# $STRONGMOOSE_SERVICE when there is none, chooses what runs:
#   intake | matching | placement | metering | settlement   python -m services.<name>
#   agent                                                   python -m clients.agent (vendor agent)
#   anything else                                           run as given (smctl, python, sh, ...)
# `exec` makes the process PID 1, so it receives SIGTERM from docker stop / the kubelet directly
# and shuts down cleanly (the runtime acks only what it committed).
set -eu

if [ "$#" -eq 0 ]; then
    if [ -z "${STRONGMOOSE_SERVICE:-}" ]; then
        echo "entrypoint: pass a process name or set STRONGMOOSE_SERVICE:" \
             "intake, matching, placement, metering, settlement or agent" >&2
        exit 64
    fi
    set -- "$STRONGMOOSE_SERVICE"
fi

case "$1" in
    intake|matching|placement|metering|settlement)
        service=$1
        shift
        exec python -m "services.$service" "$@"
        ;;
    agent)
        shift
        exec python -m clients.agent "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
