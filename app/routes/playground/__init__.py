"""The playground: its JSON API (generations, prompt sets) and its pages."""
