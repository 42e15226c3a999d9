#!/usr/bin/env bash
# Run sora_jax on TPU slices of a GKE cluster through xpk (https://github.com/AI-Hypercomputer/xpk):
# submit a training workload, list workloads, delete one. Run `launch/xpk.sh --help` for the options.
set -euo pipefail

SCRIPT_NAME=xpk.sh
LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/lib.sh
source "$LAUNCH_DIR/lib.sh"
# shellcheck source=launch/xla_flags.sh
source "$LAUNCH_DIR/xla_flags.sh"

usage() {
    cat <<'EOF'
Usage: launch/xpk.sh SUBCOMMAND --cluster CLUSTER [options] [--dry-run] [-- TRAIN ARGS]

Train sora_jax on a GKE cluster with TPU node pools (made with `xpk cluster create`). Every VM of
every slice runs the same `sora-jax train`; it finds its peers from GKE's environment
(jax.distributed.initialize() is automatic there), and a restarted workload resumes from the
latest checkpoint in --workdir.

Subcommands:
  create    `xpk workload create`: build an image (a clean copy of this checkout's --ref on top of
            --base-image, installed with pip install -e ".[tpu]" when the workload starts), or use
            --docker-image, and run `sora-jax train ARGS --workdir WORKDIR` with the generation's
            LIBTPU_INIT_ARGS on --num-slices slices of --accelerator
  list      `xpk workload list`: the cluster's workloads and their state
  delete    `xpk workload delete` of --workload

Options:
  --cluster CLUSTER       GKE cluster (required)
  --project PROJECT       default: gcloud's configured project
  --zone ZONE             default: gcloud's configured compute/zone
  --dry-run               print the commands, one per line after "+ ", and run nothing
  -h, --help              this help

create:
  --workload NAME         workload name (required; lowercase letters, digits, hyphens)
  --accelerator TYPE      v4-N, v5p-N, v5litepod-N or v6e-N (required)
  --num-slices N          slices joined over the data-center network (default 1)
  --workdir gs://BUCKET/runs/NAME   shared run directory (required)
  --base-image IMAGE      image the checkout is layered onto (default python:3.12)
  --repo DIR              local checkout to copy (default: ., this checkout)
  --ref REF               commit, branch or tag of --repo (default HEAD)
  --docker-image IMAGE    run this image as is instead (sora_jax installed, working directory = the
                          checkout); excludes --base-image, --repo and --ref
  --priority P            very-low, low, medium, high or very-high (xpk's default: medium)
  --max-restarts N        restart the workload up to N times after a failure (it resumes)
  --libtpu-args ARGS      use these LIBTPU_INIT_ARGS instead of the recommended ones (launch/xla_flags.sh)
  --xpk-arg ARG           extra argument for `xpk workload create` (repeatable), e.g. --xpk-arg=--spot
  -- ARGS                 arguments for `sora-jax train`: --config experiments/NAME.py [--config.KEY=V ...]
                          With --num-slices N > 1, --config.mesh.dcn_data=N is added unless ARGS set a
                          mesh.dcn_* key.

delete:
  --workload NAME         the workload to delete (required)

Example:
  launch/xpk.sh create --cluster my-cluster --workload sora-1b --accelerator v6e-64 \
      --workdir gs://my-bucket/runs/sora-1b -- --config experiments/sora_1b.py
EOF
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
    create | list | delete) SUBCOMMAND=$1 ;;
    *) die "unknown subcommand '$1'; expected create, list or delete (see --help)" ;;
esac
shift

declare -A OPTIONS=(
    [create]="--workload --accelerator --num-slices --workdir --base-image --repo --ref --docker-image"
    [list]=""
    [delete]="--workload"
)
OPTIONS[create]+=" --priority --max-restarts --libtpu-args --xpk-arg --"
COMMON_OPTIONS="-h --help --cluster --project --zone --dry-run"

CLUSTER="" PROJECT="" ZONE="" DRY_RUN=0
WORKLOAD="" ACCELERATOR="" NUM_SLICES=1 WORKDIR="" BASE_IMAGE="" REPO="" REF="" DOCKER_IMAGE=""
PRIORITY="" MAX_RESTARTS="" LIBTPU_ARGS="" LIBTPU_ARGS_SET=0
XPK_ARGS=() TRAIN_ARGS=()

while [[ $# -gt 0 ]]; do
    option=$1
    inline=0
    if [[ $option == --*=* ]]; then # --option=value is --option value
        set -- "${option%%=*}" "${option#*=}" "${@:2}"
        option=$1
        inline=1
    fi
    if [[ " $COMMON_OPTIONS ${OPTIONS[$SUBCOMMAND]} " != *" $option "* ]]; then
        case $option in
            --) die "only create takes arguments after '--'" ;;
            -*) [[ " ${OPTIONS[*]} " == *" $option "* ]] && die "$option does not apply to $SUBCOMMAND (see --help)" ;;
        esac
        die "unknown option '$option' (see --help)"
    fi
    case $option in
        -h | --help)
            usage
            exit 0
            ;;
        --dry-run)
            ((!inline)) || die "$option takes no value"
            DRY_RUN=1
            ;;
        --)
            shift
            TRAIN_ARGS=("$@")
            break
            ;;
        *)
            need_value "$option" $#
            case $option in
                --cluster) CLUSTER=$2 ;;
                --project) PROJECT=$2 ;;
                --zone) ZONE=$2 ;;
                --workload) WORKLOAD=$2 ;;
                --accelerator) ACCELERATOR=$2 ;;
                --num-slices) NUM_SLICES=$2 ;;
                --workdir) WORKDIR=$2 ;;
                --base-image) BASE_IMAGE=$2 ;;
                --repo) REPO=$2 ;;
                --ref) REF=$2 ;;
                --docker-image) DOCKER_IMAGE=$2 ;;
                --priority) PRIORITY=$2 ;;
                --max-restarts) MAX_RESTARTS=$2 ;;
                --libtpu-args) LIBTPU_ARGS=$2 LIBTPU_ARGS_SET=1 ;;
                --xpk-arg) XPK_ARGS+=("$2") ;;
            esac
            shift
            ;;
    esac
    shift
done

# --- validation -----------------------------------------------------------------------------------

[[ -n $CLUSTER ]] || die "--cluster is required (the GKE cluster made with 'xpk cluster create')"
[[ -z $ZONE || $ZONE =~ ^[a-z]+-[a-z]+[0-9]+(-[a-z])?$ ]] || die "--zone '$ZONE' is not a zone name (e.g. us-east5-a)"
WHERE=(--cluster="$CLUSTER")
[[ -z $PROJECT ]] || WHERE+=(--project="$PROJECT")
[[ -z $ZONE ]] || WHERE+=(--zone="$ZONE")

check_workload() {
    [[ -n $WORKLOAD ]] || die "--workload is required by $SUBCOMMAND"
    [[ $WORKLOAD =~ ^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$ ]] ||
        die "--workload '$WORKLOAD': use lowercase letters, digits and hyphens (at most 40), starting with a letter"
}

# --- subcommands ----------------------------------------------------------------------------------

do_create() {
    check_workload
    [[ -n $ACCELERATOR ]] || die "--accelerator is required by create (e.g. v6e-64)"
    parse_tpu_type "$ACCELERATOR"
    check_num_slices "$NUM_SLICES"
    [[ -n $WORKDIR ]] || die "--workdir is required by create (e.g. gs://my-bucket/runs/$WORKLOAD)"
    [[ $WORKDIR =~ ^gs://[A-Za-z0-9._/-]+$ ]] ||
        die "--workdir '$WORKDIR' must be a gs:// path: every VM of every slice reads and writes the same run"
    if [[ -n $PRIORITY ]]; then
        case $PRIORITY in
            very-low | low | medium | high | very-high) ;;
            *) die "--priority '$PRIORITY': use very-low, low, medium, high or very-high" ;;
        esac
    fi
    [[ -z $MAX_RESTARTS || $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "--max-restarts must be a number, got '$MAX_RESTARTS'"
    if [[ -n $DOCKER_IMAGE && -n $BASE_IMAGE$REPO$REF ]]; then
        die "--docker-image runs an image as is; it excludes --base-image, --repo and --ref"
    fi
    # The experiment is looked up in the checkout that becomes the image (with --docker-image, in this
    # one, which stands for the image's).
    check_train_args "${REPO:-.}" "${TRAIN_ARGS[@]}"

    local -a train=("${TRAIN_ARGS[@]}" --workdir "$WORKDIR")
    if ((NUM_SLICES > 1)) && ! has_dcn_override "${TRAIN_ARGS[@]}"; then
        train+=("--config.mesh.dcn_data=$NUM_SLICES") # Data parallelism across slices, over DCN.
    fi
    local flags
    if ((LIBTPU_ARGS_SET)); then
        local flag_chars='^[A-Za-z0-9_=.,:/ -]*$'
        flags=$LIBTPU_ARGS
        [[ $flags =~ $flag_chars ]] || die "--libtpu-args '$flags' has characters flags do not"
    else
        flags=$(libtpu_init_args "$TPU_GENERATION" "$NUM_SLICES")
    fi
    local command
    command="export LIBTPU_INIT_ARGS=\"$flags\" && sora-jax train $(quote_command "${train[@]}")"

    local -a image
    if [[ -n $DOCKER_IMAGE ]]; then
        image=(--docker-image="$DOCKER_IMAGE")
    else
        # A clean copy of the checkout (no virtual environment, runs or caches) becomes the image's /app.
        REPO=${REPO:-.} REF=${REF:-HEAD} BASE_IMAGE=${BASE_IMAGE:-python:3.12}
        [[ -d $REPO ]] || die "--repo '$REPO' is not a local directory"
        local stage=/tmp/sora_jax-$WORKLOAD
        run rm -rf "$stage"
        run mkdir -p "$stage"
        run git -C "$REPO" archive --format=tar --output="$stage.tar" "$REF"
        run tar -xf "$stage.tar" -C "$stage"
        image=(--base-docker-image="$BASE_IMAGE" --script-dir="$stage")
        command="pip install --quiet -e \".[tpu]\" && $command"
    fi
    local -a extra=()
    [[ -z $PRIORITY ]] || extra+=(--priority="$PRIORITY")
    [[ -z $MAX_RESTARTS ]] || extra+=(--max-restarts="$MAX_RESTARTS")
    run xpk workload create "${WHERE[@]}" --workload="$WORKLOAD" --tpu-type="$ACCELERATOR" \
        --num-slices="$NUM_SLICES" "${image[@]}" "${extra[@]}" "${XPK_ARGS[@]}" --command="$command"
}

do_list() {
    run xpk workload list "${WHERE[@]}"
}

do_delete() {
    check_workload
    run xpk workload delete "${WHERE[@]}" --workload="$WORKLOAD"
}

"do_$SUBCOMMAND"
