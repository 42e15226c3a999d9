#!/usr/bin/env bash
# Create a Cloud TPU slice (or several), install sora_jax on every VM, train (or prepare and encode a
# sharded dataset, one shard per VM), follow the logs, stop and delete it, with the gcloud TPU VM
# commands. Run `launch/tpu_vm.sh --help` for the options.
set -euo pipefail

SCRIPT_NAME=tpu_vm.sh
LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/lib.sh
source "$LAUNCH_DIR/lib.sh"
# shellcheck source=launch/xla_flags.sh
source "$LAUNCH_DIR/xla_flags.sh"

# Where things live on every TPU VM (under the login user's home; the remote shell expands the ~).
# shellcheck disable=SC2088
REMOTE_SRC='~/sora_jax'
# shellcheck disable=SC2088
REMOTE_VENV='~/sora_jax_venv'
# shellcheck disable=SC2088
REMOTE_LOGS='~/sora_jax_logs'
UV_INSTALLER=https://astral.sh/uv/install.sh

usage() {
    cat <<'EOF'
Usage: launch/tpu_vm.sh SUBCOMMAND --name NAME --zone ZONE [options] [--dry-run] [-- ARGS]

Run sora_jax on Cloud TPU VMs with gcloud: a slice is NAME; several slices (Multislice) are a queued
resource NAME whose slices are NAME-0, NAME-1, ... Give every subcommand the same --name, --zone,
--project and --num-slices.

Subcommands:
  create    create the slice: `gcloud compute tpus tpu-vm create`, or a queued resource
            (`gcloud compute tpus queued-resources create`) with --spot, --reserved, --queued or
            --num-slices > 1
  status    describe the slice or queued resource (a queued resource is ready when ACTIVE)
  setup     copy or clone the project onto every VM (--worker=all) and pip install -e ".[tpu]"
            into ~/sora_jax_venv (Python from uv; the TPU images ship an older one)
  train     start `sora-jax train ARGS --workdir WORKDIR` on every VM at once, in the background
            (nohup), with the generation's LIBTPU_INIT_ARGS; each VM logs to ~/sora_jax_logs/RUN.log
  prepare   start `sora-jax prepare ARGS` on every VM at once, in the background like train: each VM
            is one shard worker of one dataset (see "prepare, encode" below)
  encode    the same with `sora-jax encode ARGS`: each VM encodes its shard's clips on its own chips
  logs      stream worker 0's log until the run ends; with --all-workers, or when the run failed,
            fetch the last lines of every worker's log into --logs-dir
  stop      send SIGTERM to the run on every VM (it saves a checkpoint at the next step and exits),
            then SIGKILL whatever is left after --grace seconds
  delete    delete the slice, or the queued resource with its slices

Options (all subcommands):
  --name NAME             TPU VM / queued resource name (lowercase letters, digits, hyphens)
  --zone ZONE             e.g. us-east5-a
  --project PROJECT       default: gcloud's configured project
  --accelerator TYPE      v4-N, v5p-N, v5litepod-N or v6e-N; required by create, train, prepare and encode
  --num-slices N          slices joined over the data-center network (default 1)
  --dry-run               print the commands, one per line after "+ ", and run nothing
  -h, --help              this help

create, status, delete:
  --spot                  Spot capacity (a queued resource)
  --reserved              reserved capacity (a queued resource)
  --queued                a queued resource even for an on-demand single slice (waits for capacity
                          instead of failing); status and delete need the same choice as create
  --runtime-version V     default per generation: v4 tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite,
                          v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
  --create-arg ARG        extra argument for the gcloud create command (repeatable), e.g.
                          --create-arg=--network=my-net
  --yes                   delete without gcloud's confirmation prompt

setup:
  --repo URL|DIR          a git URL to clone on every VM, or a local checkout whose --ref is archived
                          (git archive) and copied to every VM (default: ., this checkout)
  --ref REF               commit, branch or tag to install (default HEAD)
  --python VERSION        Python for the VMs' virtual environment (default 3.12)

train:
  --workdir gs://BUCKET/runs/NAME   shared run directory (required; every VM reads and writes it)
  --run RUN               run name for the log and pid files (default: NAME)
  --libtpu-args ARGS      use these LIBTPU_INIT_ARGS instead of the recommended ones (launch/xla_flags.sh)
  -- ARGS                 arguments for `sora-jax train`: --config experiments/NAME.py [--config.KEY=V ...]
                          With --num-slices N > 1, --config.mesh.dcn_data=N is added unless ARGS set a
                          mesh.dcn_* key.

prepare, encode:
  --run RUN               run name for the log and pid files (default: NAME-prepare, NAME-encode)
  -- ARGS                 arguments for `sora-jax prepare` or `sora-jax encode`: --input (which every VM
                          must see at the same path: a gs:// store for encode; for prepare a folder
                          each VM has, e.g. a mounted bucket) and --output gs://BUCKET/DATASET, and the
                          rest of the command's flags; not --shard or --num-shards
                          VM w of slice s is shard s * H + w of S * H (H VMs a slice, S slices), its
                          number w read from the VM's metadata server (agent-worker-number). The VMs
                          of a multi-host slice run as independent single-VM TPUs
                          (TPU_PROCESS_BOUNDS=1,1,1 TPU_CHIPS_PER_PROCESS_BOUNDS=2,2,1), so each
                          finishes, fails and resumes on its own, and encode spreads its clips over
                          its own 4 chips. Rerunning resumes every shard; `logs --run` and `stop --run`
                          follow and stop it like a training run.

logs:
  --run RUN               (default: NAME)
  --lines N               lines of history to show (default 200)
  --all-workers           also fetch every worker's log, even when the run succeeded
  --logs-dir DIR          where fetched logs go, one file per worker (default logs/RUN)

stop:
  --run RUN               (default: NAME)
  --grace SECONDS         how long to wait for the checkpoint before SIGKILL (default 600)
  --force                 SIGKILL at once

Example (a v5p-64 slice; the whole walk-through is docs/pod_run.md, data in its step 3):
  launch/tpu_vm.sh create --name sora-1b --zone us-east5-a --accelerator v5p-64
  launch/tpu_vm.sh setup  --name sora-1b --zone us-east5-a
  launch/tpu_vm.sh train  --name sora-1b --zone us-east5-a --accelerator v5p-64 \
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
    create | status | setup | train | prepare | encode | logs | stop | delete) SUBCOMMAND=$1 ;;
    *) die "unknown subcommand '$1'; expected create, status, setup, train, prepare, encode, logs, stop or delete (see --help)" ;;
esac
shift

NAME="" ZONE="" PROJECT="" ACCELERATOR="" NUM_SLICES=1 DRY_RUN=0
SPOT=0 RESERVED=0 QUEUED=0 RUNTIME_VERSION="" YES=0
CREATE_ARGS=()
REPO=. REF=HEAD PYTHON_VERSION=3.12
WORKDIR="" RUN="" LIBTPU_ARGS="" LIBTPU_ARGS_SET=0
LINES=200 ALL_WORKERS=0 LOGS_DIR=""
GRACE=600
TRAIN_ARGS=()

# The options each subcommand takes, besides --name --zone --project --accelerator --num-slices --dry-run.
declare -A OPTIONS=(
    [create]="--spot --reserved --queued --runtime-version --create-arg"
    [status]="--spot --reserved --queued"
    [setup]="--repo --ref --python"
    [train]="--workdir --run --libtpu-args --"
    [prepare]="--run --"
    [encode]="--run --"
    [logs]="--run --lines --all-workers --logs-dir"
    [stop]="--run --grace --force"
    [delete]="--spot --reserved --queued --yes"
)
COMMON_OPTIONS="-h --help --name --zone --project --accelerator --num-slices --dry-run"

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
            --) die "only train, prepare and encode take arguments after '--'" ;;
            -*) [[ " ${OPTIONS[*]} " == *" $option "* ]] && die "$option does not apply to $SUBCOMMAND (see --help)" ;;
        esac
        die "unknown option '$option' (see --help)"
    fi
    case $option in
        -h | --help | --dry-run | --spot | --reserved | --queued | --yes | --all-workers | --force)
            ((!inline)) || die "$option takes no value"
            ;;&
        -h | --help)
            usage
            exit 0
            ;;
        --dry-run) DRY_RUN=1 ;;
        --spot) SPOT=1 ;;
        --reserved) RESERVED=1 ;;
        --queued) QUEUED=1 ;;
        --yes) YES=1 ;;
        --all-workers) ALL_WORKERS=1 ;;
        --force) GRACE=0 ;;
        --name | --zone | --project | --accelerator | --num-slices | --runtime-version | --create-arg | \
            --repo | --ref | --python | --workdir | --run | --libtpu-args | --lines | --logs-dir | --grace)
            need_value "$option" $#
            value=$2
            case $option in
                --name) NAME=$value ;;
                --zone) ZONE=$value ;;
                --project) PROJECT=$value ;;
                --accelerator) ACCELERATOR=$value ;;
                --num-slices) NUM_SLICES=$value ;;
                --runtime-version) RUNTIME_VERSION=$value ;;
                --create-arg) CREATE_ARGS+=("$value") ;;
                --repo) REPO=$value ;;
                --ref) REF=$value ;;
                --python) PYTHON_VERSION=$value ;;
                --workdir) WORKDIR=$value ;;
                --run) RUN=$value ;;
                --libtpu-args) LIBTPU_ARGS=$value LIBTPU_ARGS_SET=1 ;;
                --lines) LINES=$value ;;
                --logs-dir) LOGS_DIR=$value ;;
                --grace) GRACE=$value ;;
            esac
            shift
            ;;
        --)
            shift
            TRAIN_ARGS=("$@")
            break
            ;;
    esac
    shift
done

# --- validation -----------------------------------------------------------------------------------

[[ -n $NAME ]] || die "--name is required (the TPU VM or queued resource name)"
[[ $NAME =~ ^[a-z]([-a-z0-9]{0,60}[a-z0-9])?$ ]] ||
    die "--name '$NAME': use lowercase letters, digits and hyphens, starting with a letter"
[[ -n $ZONE ]] || die "--zone is required (e.g. us-east5-a)"
[[ $ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "--zone '$ZONE' is not a zone name (e.g. us-east5-a)"
if [[ -n $ACCELERATOR ]]; then
    parse_tpu_type "$ACCELERATOR"
elif [[ " create train prepare encode " == *" $SUBCOMMAND "* ]]; then
    die "--accelerator is required by $SUBCOMMAND (e.g. v5p-64)"
fi
check_num_slices "$NUM_SLICES"
((SPOT + RESERVED < 2)) || die "--spot and --reserved exclude each other"
case $SUBCOMMAND in
    prepare | encode) RUN=${RUN:-$NAME-$SUBCOMMAND} ;;
    *) RUN=${RUN:-$NAME} ;;
esac
[[ $RUN =~ ^[A-Za-z0-9._-]+$ ]] || die "--run '$RUN': use letters, digits, '.', '_' and '-'"
LOGS_DIR=${LOGS_DIR:-logs/$RUN}
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines must be a number, got '$LINES'"
[[ $GRACE =~ ^[0-9]+$ ]] || die "--grace must be a number of seconds, got '$GRACE'"

# A queued resource holds Spot, reserved and multi-slice capacity (Cloud TPU's recommended way).
USE_QUEUED=$((QUEUED || SPOT || RESERVED || NUM_SLICES > 1))
MULTISLICE=$((NUM_SLICES > 1))

GCLOUD_WHERE=(--zone="$ZONE")
[[ -z $PROJECT ]] || GCLOUD_WHERE+=(--project="$PROJECT")

# --- remote commands ------------------------------------------------------------------------------

# ssh_all COMMAND: run COMMAND on every VM of every slice at once.
ssh_all() {
    if ((MULTISLICE)); then
        run gcloud compute tpus queued-resources ssh "$NAME" "${GCLOUD_WHERE[@]}" --node=all --worker=all \
            --command="$1"
    else
        run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_WHERE[@]}" --worker=all --command="$1"
    fi
}

# ssh_slice SLICE COMMAND: run COMMAND on every VM of slice SLICE (0 when there is one) at once.
ssh_slice() {
    if ((MULTISLICE)); then
        run gcloud compute tpus queued-resources ssh "$NAME" "${GCLOUD_WHERE[@]}" --node="$1" --worker=all \
            --command="$2"
    else
        run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_WHERE[@]}" --worker=all --command="$2"
    fi
}

# ssh_worker0 COMMAND: run COMMAND on worker 0 (of slice 0).
ssh_worker0() {
    if ((MULTISLICE)); then
        run gcloud compute tpus queued-resources ssh "$NAME" "${GCLOUD_WHERE[@]}" --node=0 --worker=0 \
            --command="$1"
    else
        run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_WHERE[@]}" --worker=0 --command="$1"
    fi
}

# --- subcommands ----------------------------------------------------------------------------------

do_create() {
    local version=${RUNTIME_VERSION:-$(tpu_runtime_version "$TPU_GENERATION")}
    if ((USE_QUEUED)); then
        local -a nodes capacity=()
        if ((MULTISLICE)); then
            nodes=(--node-count="$NUM_SLICES" --node-prefix="$NAME")
        else
            nodes=(--node-id="$NAME")
        fi
        if ((SPOT)); then capacity=(--spot); fi
        if ((RESERVED)); then capacity=(--reserved); fi
        run gcloud compute tpus queued-resources create "$NAME" "${GCLOUD_WHERE[@]}" \
            --accelerator-type="$ACCELERATOR" --runtime-version="$version" "${nodes[@]}" \
            "${capacity[@]}" "${CREATE_ARGS[@]}"
        if ((!DRY_RUN)); then note "queued; the slices exist once 'launch/tpu_vm.sh status' shows state ACTIVE"; fi
    else
        run gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_WHERE[@]}" \
            --accelerator-type="$ACCELERATOR" --version="$version" "${CREATE_ARGS[@]}"
    fi
}

do_status() {
    if ((USE_QUEUED)); then
        run gcloud compute tpus queued-resources describe "$NAME" "${GCLOUD_WHERE[@]}"
    else
        run gcloud compute tpus tpu-vm describe "$NAME" "${GCLOUD_WHERE[@]}"
    fi
}

do_setup() {
    [[ $PYTHON_VERSION =~ ^3\.[0-9]+$ ]] || die "--python must look like 3.12, got '$PYTHON_VERSION'"
    local ref_chars='^[A-Za-z0-9._/^~-]+$' url_chars='^[A-Za-z0-9@:/._~+-]+$'
    [[ $REF =~ $ref_chars ]] || die "--ref '$REF' is not a git ref"
    local fetch
    if [[ $REPO == *://* || $REPO == *@*:* ]]; then
        # A URL: every VM clones it.
        [[ $REPO =~ $url_chars ]] || die "--repo '$REPO' has characters a git URL does not"
        fetch="rm -rf $REMOTE_SRC; git clone --quiet $REPO $REMOTE_SRC; git -C $REMOTE_SRC checkout --quiet $REF"
    else
        # A local checkout: archive REF and copy it to every VM.
        [[ -d $REPO ]] || die "--repo '$REPO' is neither a git URL nor a local directory"
        local archive=/tmp/sora_jax-$NAME.tar.gz
        run git -C "$REPO" archive --format=tar.gz --output="$archive" "$REF"
        if ((MULTISLICE)); then
            run gcloud compute tpus queued-resources scp "$archive" "$NAME:sora_jax.tar.gz" "${GCLOUD_WHERE[@]}" \
                --node=all --worker=all
        else
            run gcloud compute tpus tpu-vm scp "$archive" "$NAME:sora_jax.tar.gz" "${GCLOUD_WHERE[@]}" --worker=all
        fi
        fetch="rm -rf $REMOTE_SRC; mkdir -p $REMOTE_SRC; tar -xzf ~/sora_jax.tar.gz -C $REMOTE_SRC; rm ~/sora_jax.tar.gz"
    fi
    # shellcheck disable=SC2088
    local uv='~/.local/bin/uv'
    local install="[ -x $uv ] || curl -LsSf $UV_INSTALLER | sh; $uv venv --quiet --seed --allow-existing"
    install+=" --python $PYTHON_VERSION $REMOTE_VENV; cd $REMOTE_SRC; $REMOTE_VENV/bin/pip install --quiet -e \".[tpu]\""
    ssh_all "set -eo pipefail; $fetch; $install; echo \"sora_jax installed on \$(hostname)\""
}

do_train() {
    [[ -n $WORKDIR ]] || die "--workdir is required by train (e.g. gs://my-bucket/runs/$RUN)"
    [[ $WORKDIR == gs://?* ]] ||
        die "--workdir '$WORKDIR' must be a gs:// path: every VM of the pod reads and writes the same run"
    [[ $WORKDIR =~ ^gs://[A-Za-z0-9._/-]+$ ]] || die "--workdir '$WORKDIR' has characters a bucket path does not"
    check_train_args . "${TRAIN_ARGS[@]}" # setup copies this checkout (its default --repo) to the VMs.
    local -a args=("${TRAIN_ARGS[@]}" --workdir "$WORKDIR")
    if ((MULTISLICE)) && ! has_dcn_override "${TRAIN_ARGS[@]}"; then
        args+=("--config.mesh.dcn_data=$NUM_SLICES") # Data parallelism across slices, over DCN.
    fi
    local flags
    if ((LIBTPU_ARGS_SET)); then
        local flag_chars='^[A-Za-z0-9_=.,:/ -]*$'
        flags=$LIBTPU_ARGS
        [[ $flags =~ $flag_chars ]] || die "--libtpu-args '$flags' has characters flags do not"
    else
        flags=$(libtpu_init_args "$TPU_GENERATION" "$NUM_SLICES")
    fi
    local log=$REMOTE_LOGS/$RUN
    # The inner bash records the trainer's pid (for stop and logs) and its exit status (for logs).
    local inner="$REMOTE_VENV/bin/sora-jax train \"\$@\" & echo \$! > $log.pid; wait \$!; echo \$? > $log.exit"
    local remote
    remote="$(remote_run_start "$log"); export LIBTPU_INIT_ARGS=\"$flags\"; cd $REMOTE_SRC"
    remote+="; nohup bash -c $(shell_quote "$inner") sora-jax $(quote_command "${args[@]}")"
    remote+=" > $log.log 2>&1 < /dev/null &"
    ssh_all "$remote"
}

# The start of a VM's shell command that runs $RUN detached, logging under $1 (a path without
# suffix): refuse a second start while $1.pid is alive, then forget the last run's exit status.
remote_run_start() {
    local log=$1
    printf '%s' "set -e; mkdir -p $REMOTE_LOGS"
    printf '%s' "; if [ -f $log.pid ] && kill -0 \"\$(cat $log.pid)\" 2>/dev/null; then"
    printf '%s' " echo \"$RUN is already running on \$(hostname); stop it first\" >&2; exit 1; fi"
    printf '%s' "; rm -f $log.exit"
}

# do_prepare, do_encode: one shard worker on every VM of every slice; VM w of slice s writes shard
# s * TPU_HOSTS + w. The VM's number comes from its metadata server (where JAX reads it too), since a
# TPU VM's shell has no variable that holds it.
do_data() {
    check_data_args "$SUBCOMMAND" "${TRAIN_ARGS[@]}"
    [[ $DATA_OUTPUT == gs://?* ]] ||
        die "--output '$DATA_OUTPUT' must be a gs:// path: every VM of the pod writes its shard of the same dataset"
    local shards=$((TPU_HOSTS * NUM_SLICES)) log=$REMOTE_LOGS/$RUN slice
    local metadata=http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number
    local inner="$REMOTE_VENV/bin/sora-jax $SUBCOMMAND \"\$@\" & echo \$! > $log.pid; wait \$!; echo \$? > $log.exit"
    for ((slice = 0; slice < NUM_SLICES; slice++)); do
        local remote
        remote="$(remote_run_start "$log"); worker=\$(curl -sf -H Metadata-Flavor:Google $metadata)"
        remote+=" || { echo \"\$(hostname): no TPU worker number from the metadata server\" >&2; exit 1; }"
        remote+="; shard=\$(($((slice * TPU_HOSTS)) + worker))"
        if ((TPU_MULTI_HOST)); then
            # Each VM its own single-VM TPU: without this, libtpu waits for every VM of the slice to join.
            remote+="; export TPU_PROCESS_BOUNDS=1,1,1 TPU_CHIPS_PER_PROCESS_BOUNDS=2,2,1"
        fi
        remote+="; cd $REMOTE_SRC; nohup bash -c $(shell_quote "$inner") sora-jax $(quote_command "${TRAIN_ARGS[@]}")"
        remote+=" --shard \"\$shard\" --num-shards $shards > $log.log 2>&1 < /dev/null &"
        ssh_slice "$slice" "$remote"
    done
}

do_prepare() { do_data; }
do_encode() { do_data; }

do_logs() {
    local log=$REMOTE_LOGS/$RUN status=0
    # tail --pid ends with the trainer; then exit with its status (1 when it left none: killed, never ran).
    local stream="cd $REMOTE_LOGS && tail -n $LINES -F --pid=\"\$(cat $RUN.pid)\" $RUN.log"
    stream+="; sleep 2; exit \"\$(cat $RUN.exit 2>/dev/null || echo 1)\""
    ssh_worker0 "$stream" || status=$?
    if ((DRY_RUN && !ALL_WORKERS)); then
        note "when the run failed, then:"
    elif ((!ALL_WORKERS && status == 0)); then
        return 0
    fi
    local collect="tail -n $LINES $log.log" slice
    if ((MULTISLICE)); then
        for ((slice = 0; slice < NUM_SLICES; slice++)); do
            run mkdir -p "$LOGS_DIR/slice-$slice"
            run gcloud compute tpus queued-resources ssh "$NAME" "${GCLOUD_WHERE[@]}" --node="$slice" \
                --worker=all --command="$collect" --output-directory="$LOGS_DIR/slice-$slice" || true
        done
    else
        run mkdir -p "$LOGS_DIR"
        run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_WHERE[@]}" --worker=all --command="$collect" \
            --output-directory="$LOGS_DIR" || true
    fi
    if ((!DRY_RUN)); then note "each worker's last $LINES lines are in $LOGS_DIR/ (WORKER.log)"; fi
    return "$status"
}

do_stop() {
    local log=$REMOTE_LOGS/$RUN
    local remote="if [ -f $log.pid ] && kill -0 \"\$(cat $log.pid)\" 2>/dev/null; then pid=\$(cat $log.pid);"
    remote+=" else echo \"$RUN is not running on \$(hostname)\"; exit 0; fi"
    remote+="; kill -TERM \"\$pid\"; for _ in \$(seq $GRACE); do kill -0 \"\$pid\" 2>/dev/null ||"
    remote+=" { echo \"$RUN stopped on \$(hostname)\"; exit 0; }; sleep 1; done"
    remote+="; echo \"$RUN still running on \$(hostname) after ${GRACE}s; killing it\" >&2"
    remote+="; pkill -KILL -P \"\$pid\"; kill -KILL \"\$pid\" || true"
    ssh_all "$remote"
}

do_delete() {
    local -a quiet=()
    if ((YES)); then quiet=(--quiet); fi
    if ((USE_QUEUED)); then
        run gcloud compute tpus queued-resources delete "$NAME" "${GCLOUD_WHERE[@]}" --force "${quiet[@]}"
    else
        run gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_WHERE[@]}" "${quiet[@]}"
    fi
}

"do_$SUBCOMMAND"
