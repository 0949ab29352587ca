#!/bin/bash
# TorchServe in the foreground, so the container stops (and restarts) when the frontend
# dies, unlike the official image's entrypoint, which backgrounds it.
set -euo pipefail
# Metric files of a previous container's workers would be summed into the new ones.
rm -f "${PROMETHEUS_MULTIPROC_DIR:?}"/*.db
# A pid file left by the previous run of this container makes torchserve refuse to start.
rm -f /tmp/.model_server.pid
exec torchserve --start --foreground \
    --ts-config /home/model-server/tsobs/config.properties \
    --log-config /home/model-server/tsobs/log4j2.xml \
    --model-store /home/model-server/model-store \
    "$@"
