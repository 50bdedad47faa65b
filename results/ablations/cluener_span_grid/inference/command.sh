# Inference words/s of the span grid against the config without it: the seed-1 model-best of each
# (trained at the same commit, same seed and budget), alternating, one thread, CLUENER dev.
cd /work/wt/grid2   # a checkout of commit ab53a5f
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONPATH=/work/wt/grid2
for round in 1 2 3; do
  python benchmarks/compare.py _infer /work/out/ablate_cluener_seed1_span_grid/span_grid/global_pointer/training/model-best /work/out/ablate_cluener/corpus/dev.spacy /work/out/grid_infer/grid_$round.json --spans-key sc --repeats 3
  python benchmarks/compare.py _infer /work/out/ablate_cluener_seed1_recommended/recommended/global_pointer/training/model-best /work/out/ablate_cluener/corpus/dev.spacy /work/out/grid_infer/base_$round.json --spans-key sc --repeats 3
done
