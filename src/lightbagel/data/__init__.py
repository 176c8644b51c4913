"""Built-in data: the synthetic "shapes world", its tokenizer and webdataset shards."""
