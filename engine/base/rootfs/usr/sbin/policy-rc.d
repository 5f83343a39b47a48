#!/bin/sh
# In a container image build, packages must not try to start their services.
exit 101
