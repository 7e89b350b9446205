"""Retrieval-augmented generation: chunking, embeddings, the LanceDB index (incremental), dense /
full-text / hybrid search, retrieval evaluation, and answers conditioned on retrieved chunks.

    chunk.py     documents -> overlapping chunks (tokens or characters) with their metadata
    embed.py     sentence-transformers embeddings, length-sorted token-budget batches
    index.py     build / incrementally update the LanceDB table and its ANN, full-text and scalar indexes
    search.py    dense, full-text (text + boosted title) and hybrid (weighted fusion) retrieval, safe filters
    rerank.py    the optional cross-encoder that re-scores the first stage's top candidates
    evaluate.py  recall@k (with bootstrap intervals) and MRR on python-docs or SQuAD-format questions
    fit.py       fusion method, dense weight and title boost fitted on those questions
    profile.py   the fitted values as a `serve:` overlay or a saved profile
    prompt.py    the RAG prompt layout, shared by training (sft) and answering
    answer.py    retrieve, fit the chunks into the model's context and chat template, generate, cite sources
    pairing.py   which index version a registered model serves with
    retention.py which table versions are kept (pinned while referenced) and which are cleaned up

The pipeline stage is tasks/rag_index.py; the commands are `lifecycle search`, `lifecycle ask` and
`lifecycle eval-retrieval`.
"""
