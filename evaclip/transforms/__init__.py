"""evaclip.transforms"""
