"""visalign.worlds.shapes"""
