"""Retrieval-augmented generation: chunking, embeddings, the LanceDB index (incremental), dense /
full-text / hybrid search, retrieval evaluation, and answers conditioned on retrieved chunks.

    chunk.py     documents -> overlapping chunks (tokens or characters) with their metadata
    embed.py     sentence-transformers embeddings, length-sorted token-budget batches
    index.py     build / incrementally update the LanceDB table and its ANN, full-text and scalar indexes
    search.py    dense, full-text and hybrid (reciprocal-rank fusion) retrieval with safe filters
    evaluate.py  recall@k and MRR on python-docs or SQuAD-format questions
    prompt.py    the RAG prompt layout, shared by training (sft) and answering
    answer.py    retrieve, fit the chunks into the model's context and chat template, generate, cite sources
    pairing.py   which index version a registered model serves with
    retention.py which table versions are kept (pinned while referenced) and which are cleaned up

The pipeline stage is tasks/rag_index.py; the commands are `lifecycle search`, `lifecycle ask` and
`lifecycle eval-retrieval`.
"""
