"""Model tools a person runs by hand (``edge-agent models quantize``), not the serving path.

They need the optional ``tools`` extra (the ``onnx`` package), which the device image does
not install: ``pip install 'edge-agent[tools]'``. Nothing on the serving path imports them.
"""
