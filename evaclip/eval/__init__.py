"""evaclip.eval"""
