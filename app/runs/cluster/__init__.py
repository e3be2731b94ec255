"""A distributed run's hosts: the checks before its row is created (numbers, hostfile, mpirun, ssh), and what the run
page shows of each rank."""
