"""aiotrain"""
