"""evaclip.models"""
