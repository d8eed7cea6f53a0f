"""The instruction records that the data, training, LoRA, litgpt and score tests share."""

# alpaca-style records: with an input, with an empty input, and one without the key
INSTRUCTIONS = [
    {"instruction": "Name a primary colour.", "input": "", "output": "Red."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Give the opposite of hot.", "output": "Cold."},
    {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
    {"instruction": "Say hello.", "input": "", "output": "Hello!"},
    {"instruction": "Count to three.", "input": "", "output": "1, 2, 3"},
]
