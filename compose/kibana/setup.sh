#!/bin/sh
# One-shot job: import the data view and the saved search "all lines of one request".
set -eu
curl --fail-with-body --silent --show-error -X POST \
    "${KIBANA_URL:-http://kibana:5601}/api/saved_objects/_import?overwrite=true" \
    -H 'kbn-xsrf: true' --form file=@/setup/saved-objects.ndjson
echo
