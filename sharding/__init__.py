"""Raw datasets -> WebDataset tar shards, in parallel with Ray (`hvdistill shard`, `shard verify`).

Imports hvdistill.data and hvdistill.geometry; the sample schema it writes lives in
hvdistill/data/schema.py so the streaming reader shares it.
"""
