import Warren
