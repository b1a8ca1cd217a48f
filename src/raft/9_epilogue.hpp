
#endif  // RAFT_HPP
