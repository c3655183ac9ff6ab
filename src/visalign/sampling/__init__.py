"""visalign.sampling"""
