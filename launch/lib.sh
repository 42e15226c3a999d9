# shellcheck shell=bash
# Helpers shared by the launch scripts: errors, printing and running commands (with --dry-run), and the
# table of TPU accelerator types. Sourced, never run.

# die MESSAGE: print "SCRIPT: error: MESSAGE" to stderr and exit 2 (a usage error).
die() {
    echo "${SCRIPT_NAME:-launch}: error: $*" >&2
    exit 2
}

# shell_quote WORD: print WORD so that a POSIX shell reads it back unchanged; plain words stay bare and
# --option=VALUE quotes only the VALUE.
shell_quote() {
    local word=$1 plain='^[A-Za-z0-9_./:=@%+,-]+$' option='^(--[A-Za-z0-9_.-]+=)(.*)$'
    if [[ $word =~ $plain ]]; then
        printf '%s' "$word"
    elif [[ $word =~ $option ]]; then
        printf '%s' "${BASH_REMATCH[1]}"
        shell_quote "${BASH_REMATCH[2]}"
    else
        printf "'%s'" "${word//\'/\'\\\'\'}"
    fi
}

# quote_command WORD...: print the words as one shell-quoted command line (no newline).
quote_command() {
    local word sep=""
    for word in "$@"; do
        printf '%s' "$sep"
        shell_quote "$word"
        sep=" "
    done
}

# run COMMAND...: with DRY_RUN=1 print "+ COMMAND" to stdout and run nothing; otherwise print the same
# line to stderr and run the command.
run() {
    if [[ ${DRY_RUN:-0} == 1 ]]; then
        printf '+ %s\n' "$(quote_command "$@")"
    else
        printf '+ %s\n' "$(quote_command "$@")" >&2
        "$@"
    fi
}

# export_vars NAME=VALUE...: export the variables (also with DRY_RUN=1, where nothing reads them) and
# print "+ export NAME=VALUE ..." the way run prints a command.
export_vars() {
    local assignment
    for assignment in "$@"; do
        export "${assignment?}"
    done
    if [[ ${DRY_RUN:-0} == 1 ]]; then
        printf '+ %s\n' "$(quote_command export "$@")"
    else
        printf '+ %s\n' "$(quote_command export "$@")" >&2
    fi
}

# note TEXT: a comment line in the printed plan (stdout with --dry-run, stderr otherwise).
note() {
    if [[ ${DRY_RUN:-0} == 1 ]]; then
        printf '# %s\n' "$*"
    else
        printf '# %s\n' "$*" >&2
    fi
}

# need_value OPTION ARGC: die unless OPTION was given a value.
need_value() {
    (($2 >= 2)) || die "$1 needs a value"
}

# parse_tpu_type TYPE: check a Cloud TPU accelerator type and set TPU_GENERATION (v4, v5e, v5p, v6e),
# TPU_MULTI_HOST (1 when the slice spans several VMs) and TPU_HOSTS (how many VMs it spans).
parse_tpu_type() {
    local type=$1 prefix size
    if [[ ! $type =~ ^([a-z0-9]+)-([0-9]+)$ ]]; then
        die "accelerator type '$type' is not of the form GENERATION-SIZE; use one of v4-N, v5p-N, v5litepod-N, v6e-N (e.g. v5p-64)"
    fi
    prefix=${BASH_REMATCH[1]}
    size=$((10#${BASH_REMATCH[2]}))
    case $prefix in
        v4 | v5p)
            # Sizes count TensorCores: two per chip, four chips per VM.
            ((size >= 8 && size % 8 == 0)) ||
                die "accelerator type '$type': $prefix sizes count TensorCores and are multiples of 8 (e.g. ${prefix}-64)"
            TPU_GENERATION=$prefix
            TPU_MULTI_HOST=$((size > 8))
            # shellcheck disable=SC2034  # Read by the scripts that source this file.
            TPU_HOSTS=$((size / 8))
            ;;
        v5litepod | v6e)
            # Sizes count chips: 1, 4 or 8 on one VM, four chips per VM beyond that.
            case $size in
                1 | 4 | 8 | 16 | 32 | 64 | 128 | 256) ;;
                *) die "accelerator type '$type': $prefix sizes are 1, 4, 8, 16, 32, 64, 128 or 256 chips" ;;
            esac
            if [[ $prefix == v5litepod ]]; then TPU_GENERATION=v5e; else TPU_GENERATION=v6e; fi
            TPU_MULTI_HOST=$((size > 8))
            # shellcheck disable=SC2034  # Read by the scripts that source this file.
            TPU_HOSTS=$((size > 8 ? size / 4 : 1))
            ;;
        v5e | v5lite)
            die "accelerator type '$type': Cloud TPU names v5e slices v5litepod-N (e.g. v5litepod-${size})"
            ;;
        *)
            die "unknown accelerator type '$type'; use one of v4-N, v5p-N, v5litepod-N, v6e-N (e.g. v5p-64)"
            ;;
    esac
}

# tpu_runtime_version GENERATION: print the Cloud TPU software version documented for JAX on that
# generation (https://cloud.google.com/tpu/docs/runtimes).
tpu_runtime_version() {
    case $1 in
        v4) echo tpu-ubuntu2204-base ;;
        v5e) echo v2-alpha-tpuv5-lite ;;
        v5p) echo v2-alpha-tpuv5 ;;
        v6e) echo v2-alpha-tpuv6e ;;
        *) die "no runtime version known for TPU generation '$1'" ;;
    esac
}

# check_num_slices N: die unless N is a positive integer; multi-slice needs multi-host slices.
check_num_slices() {
    [[ $1 =~ ^[1-9][0-9]*$ ]] || die "--num-slices must be a positive integer, got '$1'"
    if (($1 > 1)) && [[ -n ${TPU_GENERATION:-} && ${TPU_MULTI_HOST:-1} == 0 ]]; then
        die "--num-slices $1: Multislice joins multi-host slices only; '$ACCELERATOR' is a single VM"
    fi
}

# has_dcn_override ARG...: true when the train arguments already set a mesh.dcn_* key.
has_dcn_override() {
    local arg
    for arg in "$@"; do
        [[ $arg == --config.mesh.dcn_* ]] && return 0
    done
    return 1
}

# check_train_args ROOT ARG...: the arguments after -- go to `sora-jax train`; --config must be among them,
# naming an experiment file that exists under ROOT (the checkout the run starts from: a relative path is
# read there) so that a typo fails here rather than on every host; --workdir must not (the launcher sets it).
check_train_args() {
    local root=$1 arg config="" config_next=0
    shift
    for arg in "$@"; do
        if ((config_next)); then
            config=$arg config_next=0
            continue
        fi
        case $arg in
            --config) config_next=1 ;;
            --config=*) config=${arg#--config=} ;;
            --workdir | --workdir=*) die "give --workdir before '--' (the launcher passes it to every process)" ;;
        esac
    done
    if ((config_next)) || [[ -z $config && " $* " == *" --config="* ]]; then
        die "--config needs a value: experiments/NAME.py[:VARIANT]"
    fi
    [[ -n $config ]] || die "the arguments after '--' go to 'sora-jax train' and must include --config experiments/NAME.py"
    local file=${config%%:*}
    [[ $file == /* ]] || file=$root/$file
    [[ -f $file ]] ||
        die "--config $config: no experiment file ${config%%:*} in $(cd "$root" 2>/dev/null && pwd || echo "$root") (the checkout the run starts from)"
}

# check_data_args COMMAND ARG...: the arguments after '--' go to `sora-jax COMMAND` (prepare or encode).
# They must name the input (--input; for encode also --world) and the dataset's root (--output), and must
# not choose a shard (--shard, --num-shards): the launcher gives every worker its own. Sets DATA_OUTPUT.
check_data_args() {
    local command=$1 arg input=0 output_next=0
    shift
    DATA_OUTPUT=""
    for arg in "$@"; do
        if ((output_next)); then
            DATA_OUTPUT=$arg output_next=0
            continue
        fi
        case $arg in
            --shard | --shard=* | --num-shards | --num-shards=*)
                die "leave ${arg%%=*} out of the 'sora-jax $command' arguments: the launcher gives every worker its shard"
                ;;
            --output) output_next=1 ;;
            --output=*) DATA_OUTPUT=${arg#--output=} ;;
            --input | --input=*) input=1 ;;
            --world | --world=*) [[ $command != encode ]] || input=1 ;;
        esac
    done
    [[ -n $DATA_OUTPUT ]] ||
        die "the arguments after '--' go to 'sora-jax $command' and must include --output (the dataset's root, e.g. gs://my-bucket/clips)"
    if ((!input)); then
        local wanted=--input
        [[ $command != encode ]] || wanted="--input (or --world)"
        die "the arguments after '--' go to 'sora-jax $command' and must include $wanted"
    fi
}
