#!/usr/bin/env bash
# Benchmark: `runner image pull` against `skopeo copy` + `umoci unpack`, side by side, on a
# Debian bookworm minbase image (one gzip layer) served by a local docker-registry; plus warm
# pulls (image already stored). Prints hyperfine tables and the median ratio.
#
#   deploy/bench/image-pull.sh            # RUNS=10 WORK=/var/tmp/runner-bench-image
#
# Needs (Debian): mmdebstrap docker-registry skopeo umoci hyperfine; run as root (umoci
# unpack keeps ownership). The rootfs tarball is built once and reused.
set -euo pipefail

RUNS=${RUNS:-10}
WORK=${WORK:-/var/tmp/runner-bench-image}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
repo_root=$(cd "$(dirname "$0")/../.." && pwd)

for tool in mmdebstrap docker-registry skopeo umoci hyperfine jq; do
  command -v "$tool" >/dev/null || { echo "image-pull.sh: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done
mkdir -p "$WORK"

# 1. The runner, release build.
if [ -z "${RUNNER:-}" ]; then
  (cd "$repo_root" && cargo build --release -q -p runner)
  RUNNER="$repo_root/target/x86_64-unknown-linux-musl/release/runner"
fi

# 2. A realistic root filesystem: Debian minbase, as one gzip layer of an OCI layout.
if [ ! -s "$WORK/rootfs.tar" ]; then
  mmdebstrap --variant=minbase --format=tar "$SUITE" "$WORK/rootfs.tar" "$MIRROR"
fi
layout="$WORK/layout"
if [ ! -f "$layout/index.json" ]; then
  rm -rf "$layout" && mkdir -p "$layout/blobs/sha256"
  gzip -n -6 -c "$WORK/rootfs.tar" > "$WORK/layer.tar.gz"
  diff_id=$(sha256sum "$WORK/rootfs.tar" | cut -d' ' -f1)
  layer=$(sha256sum "$WORK/layer.tar.gz" | cut -d' ' -f1)
  layer_size=$(stat -c %s "$WORK/layer.tar.gz")
  mv "$WORK/layer.tar.gz" "$layout/blobs/sha256/$layer"
  jq -cn --arg d "sha256:$diff_id" '{architecture:"amd64",os:"linux",
      config:{Env:["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
      rootfs:{type:"layers",diff_ids:[$d]}}' > "$WORK/config.json"
  config=$(sha256sum "$WORK/config.json" | cut -d' ' -f1)
  config_size=$(stat -c %s "$WORK/config.json")
  mv "$WORK/config.json" "$layout/blobs/sha256/$config"
  jq -cn --arg c "sha256:$config" --argjson cs "$config_size" --arg l "sha256:$layer" --argjson ls "$layer_size" \
    '{schemaVersion:2,mediaType:"application/vnd.oci.image.manifest.v1+json",
      config:{mediaType:"application/vnd.oci.image.config.v1+json",digest:$c,size:$cs},
      layers:[{mediaType:"application/vnd.oci.image.layer.v1.tar+gzip",digest:$l,size:$ls}]}' > "$WORK/manifest.json"
  manifest=$(sha256sum "$WORK/manifest.json" | cut -d' ' -f1)
  manifest_size=$(stat -c %s "$WORK/manifest.json")
  mv "$WORK/manifest.json" "$layout/blobs/sha256/$manifest"
  jq -cn --arg m "sha256:$manifest" --argjson ms "$manifest_size" \
    '{schemaVersion:2,manifests:[{mediaType:"application/vnd.oci.image.manifest.v1+json",digest:$m,size:$ms,
      annotations:{"org.opencontainers.image.ref.name":"bookworm"}}]}' > "$layout/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
fi

# 3. A registry on a free loopback port, with its own storage; stopped on exit.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
reg="$WORK/registry"
rm -rf "$reg" && mkdir -p "$reg"
cat > "$reg/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $reg/storage
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$reg/config.yml" > "$reg/log" 2>&1 &
reg_pid=$!
trap 'kill $reg_pid 2>/dev/null; wait $reg_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
ref="127.0.0.1:$port/debian:$SUITE"
skopeo copy -q --dest-tls-verify=false "oci:$layout:bookworm" "docker://$ref"
digest=$(skopeo inspect --tls-verify=false --raw "docker://$ref" | sha256sum | cut -d' ' -f1)
gz=$(du -m "$layout/blobs/sha256/"$(jq -r '.layers[0].digest' "$layout/blobs/sha256/$(jq -r '.manifests[0].digest' "$layout/index.json" | cut -d: -f2)" | cut -d: -f2) | cut -f1)
echo "image: $ref (one gzip layer of $gz MB; rootfs tar $(du -m "$WORK/rootfs.tar" | cut -f1) MB)"

# 4. Cold pulls, side by side. The previous run's output is moved aside, not deleted: ext4
#    skips recently deleted inodes when allocating (`recently_deleted()`), so creating 10k
#    files right after deleting 10k costs seconds of kernel time and measures the benchmark's
#    own cleanup rather than the tools. `sync` so no run pays for the previous one's writeback.
data="$WORK/runner-data"
sk="$WORK/skopeo-umoci"
trash="$WORK/trash"
rm -rf "$data" "$sk" "$trash" && mkdir -p "$trash"
trap 'kill $reg_pid 2>/dev/null; wait $reg_pid 2>/dev/null || true; rm -rf "$trash"' EXIT
hyperfine --style basic --runs "$RUNS" --warmup 1 --export-json "$WORK/cold.json" \
  --prepare "mv $data $trash/r-\$(date +%s%N) 2>/dev/null; sync" -n "runner image pull (cold)" \
  "$RUNNER --data-dir $data image pull -q $ref" \
  --prepare "mv $sk $trash/s-\$(date +%s%N) 2>/dev/null; mkdir -p $sk && sync" -n "skopeo copy + umoci unpack" \
  "skopeo copy -q --src-tls-verify=false docker://$ref oci:$sk/oci:latest && umoci unpack --image $sk/oci:latest $sk/bundle"

# 5. Warm pulls: the image is stored. A tag asks the registry (one HEAD); a digest does not.
"$RUNNER" --data-dir "$data" image pull -q "$ref" > /dev/null
hyperfine --style basic -N --runs 50 --warmup 5 --export-json "$WORK/warm.json" \
  -n "runner image pull TAG (warm, checks registry)" "$RUNNER --data-dir $data image pull -q $ref" \
  -n "runner image pull @DIGEST (warm, offline)" "$RUNNER --data-dir $data image pull -q 127.0.0.1:$port/debian@sha256:$digest"

jq -r '.results | map({(.command): .median}) | add
  | "median cold: runner \(.["runner image pull (cold)"]*1000|round) ms, skopeo+umoci \(.["skopeo copy + umoci unpack"]*1000|round) ms, ratio \((.["skopeo copy + umoci unpack"] / .["runner image pull (cold)"])*10|round/10)x"' "$WORK/cold.json"
jq -r '.results[] | "median \(.command): \(.median*1000*10|round/10) ms"' "$WORK/warm.json"
