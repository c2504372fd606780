//! STUB — being written: sled-backed Raft log and state machine.
