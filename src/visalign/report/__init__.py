"""visalign.report"""
