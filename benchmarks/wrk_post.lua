-- wrk script: POST the body in $BENCH_BODY with the headers a traced client sends (so the
-- mixin's header parsing runs), and print one JSON summary line when done.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Request-ID"] = "bench-client-request-0001"
wrk.headers["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nWRK_SUMMARY {"requests": %d, "duration_us": %d, "socket_errors": %d, "non_2xx": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
