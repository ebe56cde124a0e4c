"""evaclip.tokenizer"""
