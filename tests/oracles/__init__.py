"""Outside readers that tests compare dicomlake against (dcmtk, ...)."""
