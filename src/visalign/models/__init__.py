"""visalign.models"""
