#!/usr/bin/env bash
# Prepare or encode one sharded dataset on a GKE (or any Kubernetes) cluster as an Indexed Job: pod I of
# N runs the `sora-jax prepare` or `sora-jax encode` worker of shard I. Run `launch/gke_data.sh --help`.
set -euo pipefail

SCRIPT_NAME=gke_data.sh
LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/lib.sh
source "$LAUNCH_DIR/lib.sh"

usage() {
    cat <<'EOF'
Usage: launch/gke_data.sh prepare|encode --job NAME --image IMAGE --shards N [options] [--dry-run] -- ARGS

Write one sharded dataset with a Kubernetes Indexed Job (completionMode: Indexed): N pods, pod I runs
`sora-jax prepare|encode ARGS --num-shards N` and writes shard I under the --output in ARGS
(OUTPUT/shard-0000I-of-0000N/). Kubernetes gives each pod its index in JOB_COMPLETION_INDEX, which
sora-jax reads; it gives no count, hence --num-shards. A failed pod is replaced by one with the same
index, which resumes the shard. The manifest goes to `kubectl apply` (--print-manifest: to stdout).

Options:
  --job NAME              the Job's name (lowercase letters, digits and hyphens, at most 50) (required)
  --image IMAGE           a container image with sora_jax installed and sora-jax on its PATH (required)
  --shards N              how many shards, = the Job's completions (required)
  --parallelism P         how many pods run at once (default: N)
  --retries R             failed pods a shard may have before it counts as failed (the Job's
                          backoffLimitPerIndex; Kubernetes 1.29 or later) (default 3)
  --namespace NS          the Job's namespace (default: kubectl's current one)
  --service-account SA    the pods' Kubernetes service account: one that may read and write the
                          buckets (on GKE, through Workload Identity)
  --cpu CPUS              CPUs a pod requests (default 4); prepare runs --workers decoding processes
  --memory SIZE           memory a pod requests (default 16Gi)
  --gpus K                NVIDIA GPUs a pod gets (nvidia.com/gpu); encode spreads its clips over them
  --tpus K                TPU chips a pod gets (google.com/tpu) on a single-host TPU node pool; give
                          the pool's --node-selector cloud.google.com/gke-tpu-accelerator=... and
                          cloud.google.com/gke-tpu-topology=...
  --node-selector KEY=VALUE   run only on nodes with this label (repeatable)
  --mount BUCKET:PATH     mount the Cloud Storage bucket read-only at PATH in every pod (GKE's Cloud
                          Storage FUSE CSI driver; repeatable): how prepare reads a folder of videos
  --print-manifest        print the Job manifest (YAML) and run nothing
  --dry-run               print the command, after "+ ", and the manifest it is given, and run nothing
  -h, --help              this help
  -- ARGS                 arguments for `sora-jax prepare` or `sora-jax encode`: --input and --output
                          (a URL every pod reaches, e.g. gs://bucket/clips), and the rest of its flags;
                          not --shard or --num-shards

Example (the videos in gs://my-videos, read through a mount; 64 shards, 16 pods at a time):
  launch/gke_data.sh prepare --job prepare-clips --image us-docker.pkg.dev/p/r/sora-jax:1 --shards 64 \
      --parallelism 16 --cpu 8 --memory 32Gi --service-account sora-data --mount my-videos:/videos \
      -- --input /videos --output gs://my-bucket/clips --workers 8
Follow it with `kubectl get job prepare-clips` and `kubectl logs job/prepare-clips`.
EOF
}

# yaml_string TEXT: TEXT as a double-quoted YAML string (JSON's escapes, which YAML reads the same).
yaml_string() {
    local text=$1
    text=${text//\\/\\\\}
    text=${text//\"/\\\"}
    text=${text//$'\n'/\\n}
    text=${text//$'\t'/\\t}
    [[ $text != *[[:cntrl:]]* ]] || die "'$1' holds a control character"
    printf '"%s"' "$text"
}

# --- arguments ------------------------------------------------------------------------------------

[[ $# -gt 0 ]] || {
    usage >&2
    exit 2
}
case $1 in
    -h | --help | help)
        usage
        exit 0
        ;;
    prepare | encode) COMMAND=$1 ;;
    *) die "unknown command '$1'; expected prepare or encode (see --help)" ;;
esac
shift

JOB="" IMAGE="" SHARDS="" PARALLELISM="" RETRIES=3 NAMESPACE="" SERVICE_ACCOUNT=""
CPU=4 MEMORY=16Gi GPUS="" TPUS="" PRINT_MANIFEST=0 DRY_RUN=0
NODE_SELECTORS=() MOUNTS=() ARGS=()
while [[ $# -gt 0 ]]; do
    option=$1
    inline=0
    if [[ $option == --*=* ]]; then # --option=value is --option value
        set -- "${option%%=*}" "${option#*=}" "${@:2}"
        option=$1
        inline=1
    fi
    case $option in
        -h | --help | --dry-run | --print-manifest)
            ((!inline)) || die "$option takes no value"
            ;;&
        -h | --help)
            usage
            exit 0
            ;;
        --dry-run) DRY_RUN=1 ;;
        --print-manifest) PRINT_MANIFEST=1 ;;
        --job | --image | --shards | --parallelism | --retries | --namespace | --service-account | --cpu | \
            --memory | --gpus | --tpus | --node-selector | --mount)
            need_value "$option" $#
            case $option in
                --job) JOB=$2 ;;
                --image) IMAGE=$2 ;;
                --shards) SHARDS=$2 ;;
                --parallelism) PARALLELISM=$2 ;;
                --retries) RETRIES=$2 ;;
                --namespace) NAMESPACE=$2 ;;
                --service-account) SERVICE_ACCOUNT=$2 ;;
                --cpu) CPU=$2 ;;
                --memory) MEMORY=$2 ;;
                --gpus) GPUS=$2 ;;
                --tpus) TPUS=$2 ;;
                --node-selector) NODE_SELECTORS+=("$2") ;;
                --mount) MOUNTS+=("$2") ;;
            esac
            shift
            ;;
        --)
            shift
            ARGS=("$@")
            break
            ;;
        *) die "unknown option '$option' (see --help; the sora-jax arguments go after '--')" ;;
    esac
    shift
done

# --- validation -----------------------------------------------------------------------------------

dns_label='^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'
[[ -n $JOB ]] || die "--job is required (the Job's name, e.g. prepare-clips)"
[[ $JOB =~ $dns_label && ${#JOB} -le 50 ]] ||
    die "--job '$JOB': use lowercase letters, digits and hyphens (at most 50), starting and ending with a letter or digit"
[[ -n $IMAGE ]] || die "--image is required (a container image with sora_jax installed)"
[[ $IMAGE =~ ^[A-Za-z0-9._/:@-]+$ ]] || die "--image '$IMAGE' is not an image reference"
[[ -n $SHARDS ]] || die "--shards is required (how many shards the dataset has)"
[[ $SHARDS =~ ^[1-9][0-9]*$ ]] || die "--shards must be a positive integer, got '$SHARDS'"
PARALLELISM=${PARALLELISM:-$SHARDS}
[[ $PARALLELISM =~ ^[1-9][0-9]*$ ]] || die "--parallelism must be a positive integer, got '$PARALLELISM'"
[[ $RETRIES =~ ^[0-9]+$ ]] || die "--retries must be a number, got '$RETRIES'"
[[ -z $NAMESPACE || $NAMESPACE =~ $dns_label ]] || die "--namespace '$NAMESPACE' is not a namespace name"
[[ -z $SERVICE_ACCOUNT || $SERVICE_ACCOUNT =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]] ||
    die "--service-account '$SERVICE_ACCOUNT' is not a service account name"
[[ $CPU =~ ^([0-9]+(\.[0-9]+)?|[0-9]+m)$ ]] || die "--cpu '$CPU' is not a CPU quantity (e.g. 8, 0.5 or 500m)"
[[ $MEMORY =~ ^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$ ]] || die "--memory '$MEMORY' is not a memory quantity (e.g. 16Gi)"
[[ -z $GPUS || $GPUS =~ ^[1-9][0-9]*$ ]] || die "--gpus must be a positive integer, got '$GPUS'"
[[ -z $TPUS || $TPUS =~ ^[1-9][0-9]*$ ]] || die "--tpus must be a positive integer, got '$TPUS'"
[[ -z $GPUS || -z $TPUS ]] || die "--gpus and --tpus exclude each other"
for selector in "${NODE_SELECTORS[@]}"; do
    [[ $selector =~ ^[A-Za-z0-9./_-]+=[A-Za-z0-9._-]*$ ]] ||
        die "--node-selector '$selector' is not KEY=VALUE (a node label, e.g. cloud.google.com/gke-tpu-topology=2x2)"
done
for mount in "${MOUNTS[@]}"; do
    [[ $mount =~ ^[a-z0-9][-a-z0-9._]*[a-z0-9]:/[^:]*$ ]] ||
        die "--mount '$mount' is not BUCKET:/PATH (a bucket name and an absolute path in the pod, e.g. my-videos:/videos)"
done
if [[ -n $TPUS ]] && [[ " ${NODE_SELECTORS[*]} " != *" cloud.google.com/gke-tpu-accelerator="* ]]; then
    die "--tpus needs --node-selector cloud.google.com/gke-tpu-accelerator=... (and gke-tpu-topology=...): the TPU node pool to run on"
fi
[[ ${#ARGS[@]} -gt 0 ]] || die "the arguments for 'sora-jax $COMMAND' go after '--' (--input ... --output gs://...)"
check_data_args "$COMMAND" "${ARGS[@]}"
[[ $DATA_OUTPUT == *://?* ]] ||
    die "--output '$DATA_OUTPUT' must be a URL every pod reaches, such as gs://bucket/clips (a path would stay inside its pod)"

# --- the manifest ---------------------------------------------------------------------------------

manifest() {
    local arg selector mount index
    cat <<EOF
apiVersion: batch/v1
kind: Job
metadata:
  name: $JOB
EOF
    [[ -z $NAMESPACE ]] || echo "  namespace: $NAMESPACE"
    cat <<EOF
  labels:
    app.kubernetes.io/name: sora-jax-$COMMAND
spec:
  completionMode: Indexed
  completions: $SHARDS
  parallelism: $PARALLELISM
  backoffLimitPerIndex: $RETRIES
  template:
    metadata:
      labels:
        app.kubernetes.io/name: sora-jax-$COMMAND
EOF
    if ((${#MOUNTS[@]})); then
        echo "      annotations:"
        echo '        gke-gcsfuse/volumes: "true"'
    fi
    echo "    spec:"
    echo "      restartPolicy: Never"
    [[ -z $SERVICE_ACCOUNT ]] || echo "      serviceAccountName: $SERVICE_ACCOUNT"
    if ((${#NODE_SELECTORS[@]})); then
        echo "      nodeSelector:"
        for selector in "${NODE_SELECTORS[@]}"; do
            echo "        ${selector%%=*}: $(yaml_string "${selector#*=}")"
        done
    fi
    cat <<EOF
      containers:
        - name: sora-jax
          image: $IMAGE
          command:
            - sora-jax
            - $COMMAND
EOF
    for arg in "${ARGS[@]}" --num-shards "$SHARDS"; do
        echo "            - $(yaml_string "$arg")"
    done
    cat <<EOF
          resources:
            requests:
              cpu: $(yaml_string "$CPU")
              memory: $MEMORY
EOF
    if [[ -n $GPUS$TPUS ]]; then
        echo "            limits:"
        [[ -z $GPUS ]] || echo "              nvidia.com/gpu: $GPUS"
        [[ -z $TPUS ]] || echo "              google.com/tpu: $TPUS"
    fi
    if ((${#MOUNTS[@]})); then
        echo "          volumeMounts:"
        for index in "${!MOUNTS[@]}"; do
            echo "            - name: bucket-$index"
            echo "              mountPath: $(yaml_string "${MOUNTS[$index]#*:}")"
            echo "              readOnly: true"
        done
        echo "      volumes:"
        for index in "${!MOUNTS[@]}"; do
            mount=${MOUNTS[$index]}
            echo "        - name: bucket-$index"
            echo "          csi:"
            echo "            driver: gcsfuse.csi.storage.gke.io"
            echo "            readOnly: true"
            echo "            volumeAttributes:"
            echo "              bucketName: ${mount%%:*}"
            echo '              mountOptions: "implicit-dirs"'
        done
    fi
}

MANIFEST=$(manifest)
if ((PRINT_MANIFEST)); then
    printf '%s\n' "$MANIFEST"
    exit 0
fi
KUBECTL=(kubectl apply -f -)
[[ -z $NAMESPACE ]] || KUBECTL+=(--namespace="$NAMESPACE")
if ((DRY_RUN)); then
    run "${KUBECTL[@]}"
    note "with this manifest on its standard input:"
    while IFS= read -r line; do note "$line"; done <<<"$MANIFEST"
else
    run "${KUBECTL[@]}" <<<"$MANIFEST"
    note "follow it with: kubectl get job $JOB; kubectl logs job/$JOB (one pod); kubectl get pods -l job-name=$JOB"
fi
