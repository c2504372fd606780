//! Fault-injection harness for aof-cluster; see docs/ARCHITECTURE.md. Workloads land with their own issue.
