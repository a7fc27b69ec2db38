# Runs first on every start. Kept minimal: a mistake here can make a board unreachable over USB.
# The application starts from main.py.
