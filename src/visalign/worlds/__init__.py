"""visalign.worlds"""
