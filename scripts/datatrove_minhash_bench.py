#!/usr/bin/env python3
"""Time datatrove's MinHash deduplication stages on a JSONL corpus, on one core.

Baseline of `cargo run --release --example dedup_bench`, which calls this script on the
corpus it generates; it can also be run by hand:

    pip install datatrove spacy orjson regex tokenizers "xxhash<4"
    python3 scripts/datatrove_minhash_bench.py --input corpus.jsonl --workdir /tmp/dt

Stages timed (each one task at a time, `workers=1`, so the numbers are per core):
  1. MinhashDedupSignature (JSONL read, text normalisation, word tokenisation, 5-gram
     shingles, 128 = buckets x hashes-per-bucket permutations in numpy, per-bucket sort),
  2. MinhashDedupBuckets (one task per bucket: k-way merge of the sorted bucket files),
  3. MinhashDedupCluster (union-find over the duplicate pairs).
The filter stage (re-reading the corpus) is not timed, like the Rust side's filter.

`--tokenizer spacy` is datatrove's default word tokenizer for English (spaCy's blank `en`
tokenizer); `--tokenizer split` swaps in `str.split`, the fastest tokenizer possible in Python,
as a best case for datatrove. Prints one JSON object on the last line of stdout.
"""

import argparse
import importlib.metadata
import json
import os
import shutil
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="JSONL corpus ({'id', 'text', ...} per line)")
    ap.add_argument("--workdir", required=True, help="scratch folder (emptied first)")
    ap.add_argument("--tokenizer", choices=["spacy", "split"], default="spacy")
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--buckets", type=int, default=32)
    ap.add_argument("--hashes-per-bucket", type=int, default=4)
    args = ap.parse_args()

    try:
        from datatrove.executor import LocalPipelineExecutor
        from datatrove.pipeline.dedup.minhash import (
            MinhashConfig,
            MinhashDedupBuckets,
            MinhashDedupCluster,
            MinhashDedupSignature,
        )
        from datatrove.pipeline.readers import JsonlReader
        from datatrove.utils.word_tokenizers import WordTokenizer
    except ImportError as e:  # reported by the Rust example
        print(json.dumps({"error": f"datatrove is not importable: {e}"}))
        return 2

    class SplitTokenizer(WordTokenizer):
        """Whitespace split: the cheapest word tokenizer (best case for datatrove)."""

        def word_tokenize(self, text):
            return text.split()

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            return [(0, len(text))]

    language = "eng" if args.tokenizer == "spacy" else SplitTokenizer("eng")
    config = MinhashConfig(n_grams=args.ngram, num_buckets=args.buckets, hashes_per_bucket=args.hashes_per_bucket)

    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    sigs, buckets, remove = (os.path.join(args.workdir, d) for d in ("signatures", "buckets", "remove"))
    logs = os.path.join(args.workdir, "logs")
    data_dir, name = os.path.split(os.path.abspath(args.input))

    def run(name, pipeline, tasks):
        executor = LocalPipelineExecutor(
            pipeline=pipeline, tasks=tasks, workers=1, logging_dir=os.path.join(logs, name)
        )
        start = time.perf_counter()
        executor.run()
        return time.perf_counter() - start

    reader = JsonlReader(data_dir, glob_pattern=name, doc_progress=False)
    t_sig = run("signatures", [reader, MinhashDedupSignature(output_folder=sigs, config=config, language=language)], 1)
    t_buckets = run("buckets", [MinhashDedupBuckets(input_folder=sigs, output_folder=buckets, config=config)], args.buckets)
    t_cluster = run("cluster", [MinhashDedupCluster(input_folder=buckets, output_folder=remove, config=config)], 1)

    removed = 0
    for f in os.listdir(remove) if os.path.isdir(remove) else []:
        if f.endswith(".remove"):
            removed += os.path.getsize(os.path.join(remove, f)) // 4
    docs, size = 0, 0
    with open(args.input, "rb") as fh:
        for line in fh:
            docs += 1
            size += len(json.loads(line)["text"].encode("utf-8"))
    print(
        json.dumps(
            {
                "datatrove": importlib.metadata.version("datatrove"),
                "python": sys.version.split()[0],
                "tokenizer": args.tokenizer,
                "docs": docs,
                "text_bytes": size,
                "signature_s": t_sig,
                "buckets_s": t_buckets,
                "cluster_s": t_cluster,
                "removed": removed,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
