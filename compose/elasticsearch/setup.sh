#!/bin/sh
# One-shot job: install the ILM policy and the index templates before Fluentd writes.
# Idempotent (PUT replaces); compose runs it after Elasticsearch is healthy.
set -eu
ES="${ES_URL:-http://elasticsearch:9200}"
put() {
    echo "PUT $1"
    curl --fail-with-body --silent --show-error -X PUT "$ES/$1" \
        -H 'Content-Type: application/json' --data-binary "@$2"
    echo
}
put _ilm/policy/tsobs-logs /setup/ilm-policy.json
put _index_template/tsobs-logs-otel /setup/index-template-otel.json
put _index_template/tsobs-logs-ecs /setup/index-template-ecs.json
