"""evaclip.data"""
