"""Plain Python clients for the AIND metadata services and CAVE; they never import Prefect."""
