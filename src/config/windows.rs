//! TEMPORARY stub, replaced by the envcfg branch.
