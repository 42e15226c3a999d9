# shellcheck shell=bash
# The recommended XLA / libtpu flags, per accelerator generation, in one place.
#
# Sourced by tpu_vm.sh, xpk.sh and slurm.sbatch; nothing else in the project sets these flags.
# Every flag here is one that JAX's list of XLA flags (docs/xla_flags.md, docs/gpu_performance_tips.md)
# or the public MaxText recipes for that generation use; the comment on each says what it does.
# They only tune scheduling and fusion of collectives: numerics and the program are unchanged.
#
# Left out on purpose: --xla_tpu_spmd_rng_bit_generator_unsafe (partitions the RNG in a way that can
# change random numbers with the sharding; our runs must be a pure function of (config, seed, step)).

# Overlap of collectives with compute ("continuation fusion"), used on v5e, v5p and v6e.
_XLA_TPU_OVERLAP=(
    # Fuse an async collective with the compute scheduled between its -start and -done.
    --xla_tpu_enable_async_collective_fusion=true
    # Include all-gathers (FSDP gathers of the weights) in that fusion.
    --xla_tpu_enable_async_collective_fusion_fuse_all_gather=true
    # Let one collective continue over several fusions instead of just one.
    --xla_tpu_enable_async_collective_fusion_multiple_steps=true
    # Overlap compute and communication on one TensorCore (single-core form of megacore fusion).
    --xla_tpu_overlap_compute_collective_tc=true
    # Run all-gathers asynchronously, so they overlap with compute.
    --xla_enable_async_all_gather=true
)

# v4: MaxText's v4 recipes use async all-gather only.
_XLA_TPU_V4=(
    # Run all-gathers asynchronously, so they overlap with compute.
    --xla_enable_async_all_gather=true
)

# v5p (two TensorCores per chip, megacore): the overlap flags plus MaxText's v5p additions.
_XLA_TPU_V5P=(
    "${_XLA_TPU_OVERLAP[@]}"
    # Do not fuse all-gathers into convolutions/all-reduces in megacore fusion (keeps them async).
    --xla_tpu_megacore_fusion_allow_ags=false
    # Run collective-permutes asynchronously (the ring steps of sequence-parallel attention).
    --xla_enable_async_collective_permute=true
    # Pipeline all-gathers backwards through scan loops (our transformer blocks run under a scan).
    --xla_tpu_enable_ag_backward_pipelining=true
)

# v5e: the overlap flags (MaxText's v5e recipes).
_XLA_TPU_V5E=("${_XLA_TPU_OVERLAP[@]}")

# v6e (Trillium): the overlap flags plus a larger scoped VMEM (MaxText's Trillium recipes).
_XLA_TPU_V6E=(
    "${_XLA_TPU_OVERLAP[@]}"
    # Scoped VMEM limit of 96 MiB, so fused kernels (attention, matmul+collective) get bigger tiles.
    --xla_tpu_scoped_vmem_limit_kib=98304
)

# Several slices over the data-center network (DCN), any generation.
_XLA_TPU_MULTISLICE=(
    # Optimise the DCN all-reduce of data-parallel gradients so it overlaps with compute.
    --xla_tpu_enable_data_parallel_all_reduce_opt=true
    # Pipeline those data-parallel ops across iterations even when their sizes differ
    # (uses some more memory, so only with several slices, where the DCN all-reduce is slow).
    --xla_tpu_data_parallel_opt_different_sized_ops=true
)

# GPUs (slurm.sbatch): JAX's GPU performance tips.
_XLA_GPU=(
    # Schedule so that asynchronous collectives overlap with compute.
    --xla_gpu_enable_latency_hiding_scheduler=true
)

# libtpu_init_args GENERATION NUM_SLICES: print LIBTPU_INIT_ARGS for a TPU generation (v4, v5e, v5p,
# v6e) and slice count, space-separated.
libtpu_init_args() {
    local generation=$1 num_slices=$2
    local -a flags
    case $generation in
        v4) flags=("${_XLA_TPU_V4[@]}") ;;
        v5e) flags=("${_XLA_TPU_V5E[@]}") ;;
        v5p) flags=("${_XLA_TPU_V5P[@]}") ;;
        v6e) flags=("${_XLA_TPU_V6E[@]}") ;;
        *)
            echo "libtpu_init_args: no flags for TPU generation '$generation'" >&2
            return 1
            ;;
    esac
    if ((num_slices > 1)); then
        flags+=("${_XLA_TPU_MULTISLICE[@]}")
    fi
    echo "${flags[*]}"
}

# xla_gpu_flags: print the XLA_FLAGS recommended on GPUs, space-separated.
xla_gpu_flags() {
    echo "${_XLA_GPU[*]}"
}
