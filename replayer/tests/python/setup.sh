#!/bin/sh
# Installs the independent client's dependencies (grpcio from PyPI) when they are missing.
set -eu
if python3 -c 'import grpc, grpc_tools' 2>/dev/null; then
    exit 0
fi
python3 -m pip install --quiet --disable-pip-version-check grpcio==1.85.1 grpcio-tools==1.85.1
