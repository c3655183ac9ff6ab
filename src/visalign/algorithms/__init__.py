"""visalign.algorithms"""
