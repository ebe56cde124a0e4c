"""evaclip.train"""
