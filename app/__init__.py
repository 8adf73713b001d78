"""Producer-side queue service and the Flask admin app."""
