"""Generated code; regenerate with generate.sh, do not edit."""
