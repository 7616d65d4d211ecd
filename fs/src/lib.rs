//! mafs core: the shared-volume format, block devices, journal and filesystem logic.
