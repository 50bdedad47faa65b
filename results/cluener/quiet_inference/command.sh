# Quiet re-measurement of CLUENER inference: global_pointer and ner model-best alternating, one thread.
cd /work/run2
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 VECLIB_MAXIMUM_THREADS=1 PYTHONPATH=/work/run2
mkdir -p /work/out/quiet
for round in 1 2; do
  /work/main/.venv/bin/python benchmarks/compare.py _infer /work/out/cluener_cmp/global_pointer/training/model-best /work/out/cluener_corpus/dev.spacy /work/out/quiet/gp_$round.json --spans-key sc --repeats 3
  /work/main/.venv/bin/python benchmarks/compare.py _infer /work/out/cluener_cmp/ner/training/model-best /work/out/cluener_corpus/dev.spacy /work/out/quiet/ner_$round.json --spans-key sc --repeats 3 --use-ents
done
